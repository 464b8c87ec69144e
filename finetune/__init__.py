"""TRL + PEFT LoRA fine-tuning of supporters."""
