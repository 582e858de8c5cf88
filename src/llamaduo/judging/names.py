"""The names the judging tables are keyed on, shared by the judge protocol, the scores and the reports. Imports
nothing, so what reads the scores (the report stage) does not depend on how judges are asked."""

METRICS = ("precision", "similarity")  # the judge's scores of one answer, 0-100 each
LOCAL = "local"  # the `answerer` of the local model's answers (services are named by their provider)
