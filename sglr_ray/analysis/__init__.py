"""Reading results back with pandas: the paper's tables and the report.

runs.py     load a results directory; keys (run_key, cell_key, workload) and methods from their declarations
stats.py    means with 95% intervals, paired t-tests, Holm, TOST, the pooled test (scipy, statsmodels)
significance.py  the tests behind a report's verdicts, per table of paired comparisons
provenance.py    machines, code versions, resumes, superseded runs
tables.py   the paper's Tables 1-5 and more, and paired_difference (the module most users import)
controls.py      a study of controls against its baseline studies (`sglr-ray report --baseline`)
systems.py  time to accuracy on the virtual clock, every variant of a directory in one table
paper.py    the paper's figures and the trends it claims
report.py   `sglr-ray report`: report.md (sentences.py writes its sentences, plots.py its plots)
"""
