"""The gate engine and the gates. Only gates/modeling.py loads models (lazily)."""
