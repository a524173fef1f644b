"""HTML reports: one self-contained file (plotly inlined, opens offline) with the header, the roofline, the
timeline, memory over time, the plan comparison and the predicted-against-measured validation view.

`build` holds the four reports (prediction, plan search, one trace, a validation results folder); `cli` the
`roofsim report` command. Nothing is imported here, so that the CLI stays quick to start.
"""
