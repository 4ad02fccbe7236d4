"""The tools behind the commands: benchmarks, the demo, the base-scale smoke runs, cost reports. Imports
the layers below; the commands (cli/) are thin argparse mains over it.
"""
