"""Recipes: runnable scripts (``python recipes/x.py``, ``accelerate launch``, ``torchrun``) and YAML configs.

Installed, they are ``hf_metatransfer.recipes`` and the ``hf-metatransfer`` command runs them.
"""
