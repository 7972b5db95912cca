"""The tree: its arrays and layout, builders, Newick, LCA tables and the files it is kept in."""
