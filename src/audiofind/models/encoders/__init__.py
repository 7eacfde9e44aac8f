"""Pretrained network definitions: the EfficientAT audio tagger and Hugging Face sentence encoders."""
