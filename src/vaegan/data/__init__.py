"""The data sets: the IDX format, what each supported dataset is, its download (`download.py`), and
the prepared train/val/test splits."""
