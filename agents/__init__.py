"""Agents over LeWorld: latent planners (CEM, iCEM, MPPI) and SB3 training in imagination.

Empty until the agents issue; the package exists so the layout and the import
order (numba_kernels <- world_models <- leworld_env <- agents) hold from day one.
"""
