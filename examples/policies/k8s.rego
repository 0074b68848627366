# Decides requests for the production cluster (rule k8s-rego in policy-rego.yml).
# The bot asks for data.jit.decision; the README documents the input document and the answer.
package jit

import rego.v1

# Exec into pods needs a change ticket, whoever asks and whenever.
decision := {"effect": "deny", "message": "exec needs a change ticket (CHG-...) in the reason."} if {
	"exec" in input.request.scopes
	not regex.match(`\bCHG-\d+\b`, input.request.reason)
}

# SREs looking (view only) in Berlin business hours: no human needed, three times a day at most.
else := {"effect": "auto_approve"} if {
	"sre" in input.requester.groups
	every scope in input.request.scopes {
		scope == "view"
	}
	berlin_business_hours
	input.recent_auto_approvals < 3
}

# Exec with a ticket: two SRE leads.
else := {"effect": "require", "approvals": 2, "approvers": ["sre-leads"]} if {
	"exec" in input.request.scopes
}

# Anything else: this rule passes, and the cluster's own approvers decide.
else := {"effect": "pass"}

# rego-cpp's time.parse_rfc3339_ns does not read RFC 3339 text; time.clock and time.weekday take
# the nanoseconds the bot passes as input.now_ns, with a time zone.
berlin_business_hours if {
	time.weekday([input.now_ns, "Europe/Berlin"]) in {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday"}
	[hour, _, _] := time.clock([input.now_ns, "Europe/Berlin"])
	hour >= 8
	hour < 19
}
