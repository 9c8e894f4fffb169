"""Findings and figures regenerated from MLflow.

MLflow runs of a sweep -> one tidy table (``fetch``, cached by ``cache``) -> the research
questions answered with numbers (``analysis``) -> figures (``figures``) -> report.md,
report.html and findings.json (``report``) -> logged as a report run (``publish``).
``pipeline.generate`` ties them together; ``python -m reporting`` is its command line.
This package never imports Airflow or torch: it runs in the Airflow worker and on laptops.
"""
