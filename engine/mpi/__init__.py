"""The embedded Master Patient Index: certified register, matching, review, PIX/PDQ, audit.

Entry points: `engine.mpi.service.mpi_from(context)` (the engine's shared instance),
`engine.mpi.service.Mpi` (the facade), `engine.mpi.cli.mpi_command` (`passerelle mpi ...`).
See engine/mpi/README.md.
"""
