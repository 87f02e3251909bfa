"""A small AST mutation tester for the modules that keep VOXL's promises (see ``__main__``)."""
