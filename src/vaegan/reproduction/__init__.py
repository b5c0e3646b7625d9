"""`vaegan reproduce`: rebuild a registered model from its record and say whether it is the same."""
