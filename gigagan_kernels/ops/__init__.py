"""The ops, one package each (after xformers' ops/fmha): the public function in the package's __init__, one file
per backend, the launch tables and plans, and dispatch.py, which chooses."""
