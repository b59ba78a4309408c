"""Model registry: the values of the ``{model}`` wildcard."""

from mosbench.errors import MosbenchError

MODELS = ("lstm",)


def build_model(name, vocab_size, hparams):
    """Build and initialise the named model from its preset's hyperparameters."""
    if name == "lstm":
        from mosbench.models.lstm import LSTMLanguageModel

        model = LSTMLanguageModel(
            vocab_size, hparams["emsize"], hparams["nhid"], hparams["nlayers"],
            dropout=hparams["dropout"], tie_weights=hparams["tie_weights"],
            init_range=hparams["init_range"],
        )
        return model.build_for()
    raise MosbenchError(f"unknown model '{name}'; allowed: {list(MODELS)}")
