"""Using a trained model: predict, features, export (main.py's apply modes)."""
