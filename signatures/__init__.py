"""DSPy signatures: one per RoleCS agent and per CSC subtask."""
