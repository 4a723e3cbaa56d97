"""Training, built from one recipe (`recipes`: TOML -> `TrainRecipe`).

`run.train` wires a run: the data (`data`: annotation files, augmentation, batches), the model (initialised
by `rtmo.nn.init`), the criterion of each stage (`losses.Criterion`, SimOTA from `assigner`), the optimiser
and schedule (`optim`), the EMA (`ema`) and the loop (`trainer.Trainer`), whose run folder `rundir` writes.
"""
