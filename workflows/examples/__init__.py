"""Example specs (YAML) and `demo_data`, which writes the CSV example's data."""
