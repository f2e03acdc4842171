"""Loss functions, one per paper equation, pure functions on tensors."""
