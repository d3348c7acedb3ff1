"""The operator's commands for an Ollama fleet: roll, status, backup, restore, drain."""
