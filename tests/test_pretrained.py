"""The shipped weights: their cards are complete and their numbers reproduce."""

import pytest

from qsegment import list_pretrained, load_model
from qsegment.checkpoint import CheckpointError
from qsegment.datasets import Split, load_split
from qsegment.engine.evaluate import predict_samples, score

# name -> (model, up-sampling, Dice floor on the validation images at the card's size)
SHIPPED = {"qsegment-nearest": ("qsegment", "nearest", 0.79),
           "qsegment-unpool": ("qsegment", "unpool", 0.79),
           "qsegment-nearest-312": ("qsegment", "nearest", 0.77),
           "qsegment-nearest-long": ("qsegment", "nearest", 0.80),
           "qsegment-nearest-crop384": ("qsegment", "nearest", 0.80),
           "qsegment-nearest-distill": ("qsegment", "nearest", 0.80),
           "qsegment-nearest-transfer": ("qsegment", "nearest", 0.80),
           "qsegment-nearest-transfer-jpeg": ("qsegment", "nearest", 0.80),
           "qsegment-imx": ("qsegment-imx", "nearest", 0.80),
           "qsegment-imx-704": ("qsegment-imx", "nearest", 0.79),
           "qsegment-imx-transfer": ("qsegment-imx", "nearest", 0.80),
           "qsegment-half": ("qsegment-half", "nearest", 0.80)}


def test_shipped_weights_are_listed():
    assert list_pretrained() == sorted(SHIPPED)  # not the int8 observers: a file, not a model


@pytest.mark.parametrize("name", SHIPPED)
def test_card_describes_data_recipe_and_commit(name):
    model, card = load_model(name)
    assert card["name"] == name and card["model"] == SHIPPED[name][0]
    assert card["model_args"].get("upsample", "nearest") == SHIPPED[name][1]
    assert card["data"]["train"] == list(Split().train) and card["data"]["val"] == list(Split().val)
    assert card["config"]["epochs"] == card["epochs_done"] and card["wall_time_s"] > 0
    assert card["git_commit"] and 0 < card["threshold"]["value"] < 1
    assert not model.training


@pytest.mark.parametrize("name", SHIPPED)
def test_card_metrics_reproduce(name, data_dir):
    model, card = load_model(name)
    _, val = load_split(data_dir)
    probs = predict_samples(model, val, card["threshold"].get("inference_size"))
    measured = score(probs, val, card["threshold"]["value"])["pooled"]
    assert measured == pytest.approx(card["val_metrics_at_threshold"]["pooled"], abs=1e-4)
    assert measured["dice"] > SHIPPED[name][2] and measured["auc"] > 0.97


def test_unknown_name_lists_the_shipped_ones():
    with pytest.raises(CheckpointError,
                       match="shipped: qsegment-half, qsegment-imx, qsegment-imx-704, "
                             "qsegment-imx-transfer, qsegment-nearest"):
        load_model("qsegment-huge")


def test_every_shipped_file_has_a_row_tied_to_its_architecture_and_data():
    from qsegment.models import MODELS
    from qsegment.pretrained import WEIGHTS, WEIGHTS_DIR, read_card

    carded = {p.stem for p in WEIGHTS_DIR.glob("*.safetensors") if p.with_suffix(".json").is_file()}
    assert set(WEIGHTS.names()) == carded
    for row in WEIGHTS:
        card = read_card(row.load())
        assert card.model == row.architecture and row.architecture in MODELS.names()
        assert card["data"]["dataset"] == "CHASE_DB1" and row.data.startswith("CHASE_DB1")
