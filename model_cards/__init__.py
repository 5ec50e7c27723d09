"""Model-card templates (Jinja, rendered with huggingface_hub's ModelCard), shipped inside the wheel."""
