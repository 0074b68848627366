"""The Slack edge: the Bolt app, thin listeners, Block Kit builders and the Slack-backed ports."""
