"""Train: user_features → an autoencoder (entry: `stage.run`, the only module that knows Spark and
TorchDistributor).

`spec` is the typed boundary (`TrainSpec` in, `TrainOutcome` out) and the step arithmetic; `trainer`
is the function every training process runs; `feeders` give it batches; `model` is the network and its
file; `tracking` records runs in MLflow.
"""
