"""The digest as a picture: the last 7 days' decisions by outcome (stacked bars, with the day's
requests as a line over them) and the day's top resources, as PNG bytes, drawn from the same
``Digest`` object as the text and the JSON.

matplotlib is imported when a chart is drawn, not with this module: the bot and every other command
start without it. The figure is drawn on an Agg canvas it owns (no pyplot), so there is no global
backend or current figure for two threads to share.
"""

from __future__ import annotations

import io
import logging

from bot.domain.digest import Digest

# The PNG's size in pixels: WIDTH_IN x HEIGHT_IN inches at DPI.
WIDTH_IN, HEIGHT_IN, DPI = 10.0, 4.5, 100
SHOWN_DAYS = 7
# How requests were decided, bottom to top: each request has one of these outcomes, so the bars
# stack (a failed mint comes after an approval, and would count it twice).
OUTCOMES = (
    ("approved_by_people", "approved by people", "#2b8a3e"),
    ("auto_approved", "auto-approved", "#69db7c"),
    ("denied", "denied", "#c92a2a"),
    ("expired", "expired", "#f59f00"),
    ("cancelled", "cancelled", "#868e96"),
)


def chart_png(digest: Digest) -> bytes:
    # matplotlib narrates at INFO (building its font cache on first use, fonts it skips, guesses it
    # made): the bot's log is about access, so only its warnings get through.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plan = digest.plan
    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(figure)
    days, resources = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    figure.suptitle(f"jit-bot digest {plan.local_date.isoformat()} ({plan.timezone})")

    indexes = range(len(plan.days) - SHOWN_DAYS, len(plan.days))
    # Bars at numbered positions with the labels set apart: given text, matplotlib guesses whether
    # "Wed 28" (or a resource named 2026) is a date or a number, and logs that it guessed.
    positions = list(range(SHOWN_DAYS))
    bottoms = [0] * SHOWN_DAYS
    for key, label, colour in OUTCOMES:
        heights = [digest.day_counts(index)[key] for index in indexes]
        days.bar(positions, heights, bottom=bottoms, label=label, color=colour)
        bottoms = [bottom + height for bottom, height in zip(bottoms, heights, strict=True)]
    requested = [digest.day_counts(index)["requested"] for index in indexes]
    days.plot(positions, requested, color="#212529", marker="o", label="requested")
    days.set_xticks(positions, [f"{plan.date_of(index):%a %d}" for index in indexes])
    days.set_title("decisions by outcome, last 7 days")
    days.set_ylabel("requests")
    days.legend(fontsize="small", loc="upper left")
    days.yaxis.get_major_locator().set_params(integer=True)

    top = list(reversed(digest.figures.top_resources))
    if top:
        rows = list(range(len(top)))
        resources.barh(rows, [r.count for r in top], color="#1971c2")
        resources.set_yticks(rows, [r.key for r in top])
        resources.xaxis.get_major_locator().set_params(integer=True)
    else:
        resources.text(0.5, 0.5, "no requests", ha="center", va="center", transform=resources.transAxes)
        resources.set_xticks([])
        resources.set_yticks([])
    resources.set_title(f"top resources, {plan.local_date:%a %d}")
    figure.tight_layout()

    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI)
    return out.getvalue()
