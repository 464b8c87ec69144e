"""DSPy modules composing the signatures: RoleCS, supporters, rewriter, judges."""
