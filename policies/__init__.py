"""The ontosearch policy pack (run by `pulumi preview --policy-pack policies`) and its evaluator for tests."""
