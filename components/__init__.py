"""Pulumi ComponentResources of the ontosearch stacks.

Infrastructure only; runtime code lives in the `ontosearch` package.
"""
