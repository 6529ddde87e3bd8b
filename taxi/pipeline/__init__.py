"""The Luigi tasks, by stage: each `run()` reads its inputs, calls the functions of the module named for the work
and writes its outputs. `taxi.tasks` is the module `luigi --module` imports."""
