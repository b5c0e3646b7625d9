"""The data sets: the IDX format, what each supported dataset is, and the prepared train/val/test splits."""
