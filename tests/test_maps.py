"""The text-prompted map generator: prompts from maps and from text, metrics, the generator itself."""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch

from casdm.prompts import (
    ClassPrompt,
    PromptError,
    Vocabulary,
    describe_map,
    fit_vocabulary,
    format_prompt,
    parse_prompt,
)
from tests.conftest import tiny_params

NAMES = ("Black Background", "Abdominal Wall", "Liver", "Gastrointestinal Tract", "Fat", "Grasper",
         "Connective Tissue", "Blood", "Cystic Duct", "L-hook Electrocautery", "Gallbladder", "Hepatic Vein",
         "Liver Ligament")
VOCAB = Vocabulary(NAMES, tuple((0.05, 0.2) for _ in NAMES), min_fraction=0.002)


def hand_drawn() -> np.ndarray:
    """30 x 30: Fat background; Liver a large block upper left; two Grasper tips low in the middle;
    Cystic Duct one small square in the centre; three Blood specks on the right; one Blood pixel
    elsewhere is a speck below min_fraction and must not count as a region."""
    m = np.full((30, 30), 4, dtype=np.uint8)
    m[0:12, 0:12] = 2  # 144 px = 0.16 -> medium; centroid (6, 6) -> upper left
    m[22:24, 12:14] = 5
    m[22:24, 16:18] = 5  # 8 px = 0.0089 -> small; two regions; centroid (23, 15) -> lower centre
    m[14:17, 14:17] = 8  # 9 px -> small, centre, one region
    m[2:4, 25:27] = m[8:10, 25:27] = m[14:16, 25:27] = 7  # 12 px, 3 regions, centroid (9, 26) -> upper right
    m[28, 0] = 7  # one pixel: under min_fraction (0.002 * 900 = 1.8 px), not a region
    return m


def test_prompt_from_a_hand_drawn_map_is_exact():
    assert format_prompt(describe_map(hand_drawn(), VOCAB)) == (
        "Liver, medium, upper left, one region; Fat, large, centre, one region; "
        "Grasper, small, lower centre, two regions; Blood, small, upper right, several regions; "
        "Cystic Duct, small, centre, one region")


def test_size_thresholds_are_each_classes_own_tertiles():
    maps = []
    for side in (2, 4, 6, 8, 10, 12):
        m = np.zeros((20, 20), dtype=np.uint8)
        m[:side, :side] = 2
        maps.append(m)
    v = fit_vocabulary(maps, list(NAMES))
    liver = v.thresholds[2]
    assert liver[0] == pytest.approx(np.quantile([s * s / 400 for s in (2, 4, 6, 8, 10, 12)], 1 / 3))
    words = [describe_map(m, v)[1].size for m in maps]  # clause 0 is the background
    assert words == ["small", "small", "medium", "medium", "large", "large"]
    assert Vocabulary.from_dict(v.to_dict()) == v


def test_hand_written_prompts_parse_in_any_order_and_case():
    p = parse_prompt("grasper, two regions, small, center;  LIVER , top left,large", VOCAB)
    assert p == (ClassPrompt("Liver", "large", "upper left", None), ClassPrompt("Grasper", "small", "centre", "two regions"))
    assert parse_prompt(format_prompt(p), VOCAB) == p
    assert parse_prompt("Cystic Duct;", VOCAB) == (ClassPrompt("Cystic Duct"),)


@pytest.mark.parametrize("text, word, suggestion", [
    ("Liver, large; Cystic Duc, small", "'Cystic Duc'", "'Cystic Duct'"),
    ("Liver, smal, centre", "'smal'", "'small'"),
    ("Liver, large, uper left", "'uper left'", "'upper left'"),
    ("Liver, large, three regions", "'three regions'", "'two regions'"),
])
def test_parser_errors_name_the_bad_word_and_the_closest_valid_one(text, word, suggestion):
    with pytest.raises(PromptError) as exc:
        parse_prompt(text, VOCAB)
    assert word in str(exc.value) and f"did you mean {suggestion}" in str(exc.value)


def test_parser_refuses_empty_prompts_and_repeated_fields():
    with pytest.raises(PromptError, match="empty prompt"):
        parse_prompt(" ; ", VOCAB)
    with pytest.raises(PromptError, match="'Liver' named twice"):
        parse_prompt("Liver; liver, small", VOCAB)
    with pytest.raises(PromptError, match="Liver has two sizes"):
        parse_prompt("Liver, small, large", VOCAB)


def test_prompt_file_errors_name_file_and_line(tmp_path):
    from benchmark.stages.mapgen import read_prompt_file

    f = tmp_path / "rare.txt"
    f.write_text("# rare classes\nLiver, large; Blood, small\n\nHepatic Veins, small\n")
    with pytest.raises(PromptError, match=r"rare\.txt:4: .*'Hepatic Veins'.*did you mean 'Hepatic Vein'"):
        read_prompt_file(f, VOCAB)
    f.write_text("Liver, large; Blood, small  # a comment\n")
    assert read_prompt_file(f, VOCAB) == [(ClassPrompt("Liver", "large"), ClassPrompt("Blood", "small"))]


def test_clip_hub_id_fails_within_a_second_when_the_hub_is_unreachable(monkeypatch):
    from casdm import text

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    text._load_clip.cache_clear()

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    t0 = time.perf_counter()
    with pytest.raises(text.TextEncoderError, match="clip:openai/clip-vit-base-patch32: .*not reachable"):
        text.encode_phrases("clip:openai/clip-vit-base-patch32", ["Liver, large"])
    assert time.perf_counter() - t0 < 1.0


# ------------------------------------------------------------------------------------------ metrics
def test_adherence_realism_and_diversity_measure_what_they_say():
    from benchmark.metrics.maps import RetrievalBaseline, adherence, diversity, realism

    m = hand_drawn()
    own = describe_map(m, VOCAB)
    perfect = adherence([own], [m], VOCAB, rare=["Blood"])
    assert perfect["adherence"] == 1.0 and perfect["clause_accuracy"] == 1.0 and perfect["exact_class_set"] == 1.0
    no_duct = m.copy()
    no_duct[no_duct == 8] = 4
    moved = np.rot90(m, 2).copy()  # same classes, opposite places
    a = adherence([own, own], [no_duct, moved], VOCAB)
    assert a["presence"] == pytest.approx((4 / 5 + 1) / 2) and a["absence"] == 1.0
    assert a["location"] < 1 and a["size"] == 1.0 and a["presence_per_class"]["Cystic Duct"] == 0.5
    assert realism([m, moved], [m, moved], VOCAB)["cooccurrence_l1"] == 0.0
    assert realism([m], [m], VOCAB)["area_w1"] == 0.0
    assert realism([no_duct], [m], VOCAB)["cooccurrence_l1"] > 0
    assert diversity([[m, m, m]]) == 0.0 and diversity([[m, moved]]) > 0
    base = RetrievalBaseline([no_duct, m, moved], VOCAB)
    assert base.candidates(own) == [1, 2]  # the exact class set, never the map missing a class
    assert base.candidates(parse_prompt("Liver; Fat; Hepatic Vein", VOCAB)) == [0]  # closest set


# ---------------------------------------------------------------------------------------- generator
@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """A tiny generator trained 3 steps with the offline sentence encoder, through the shared trainer."""
    from benchmark.engine.trainer import RunPaths, train
    from benchmark.stages.mapgen import MAPGEN, generator_params

    root = tmp_path_factory.mktemp("mapgen")
    p = tiny_params(maps={"train": {"steps": 3}})
    paths = RunPaths(data=prepared, checkpoints=root / "ckpt", model=root / "model", metrics=root / "m.json",
                     plot=root / "p.csv")
    metrics = train(generator_params(p), MAPGEN, paths, track=False)
    return p, root / "model", metrics


def test_generator_trains_and_generates_valid_class_ids_from_text(trained, prepared):
    from benchmark.engine.data import PreparedDataset
    from benchmark.stages.mapgen import load_generator

    p, folder, metrics = trained
    assert metrics["steps"] == 3 and np.isfinite(metrics["final_loss"])
    table = PreparedDataset(prepared, "train").table
    pipe = load_generator(p, folder, table)
    assert pipe.mapgen.vocab.names == tuple(table.names)
    g = [torch.Generator().manual_seed(s) for s in (0, 1)]
    out = pipe(["Liver, large, upper left; Grasper, small, centre", "Cystic Duct, small"], 3, 2.0, generator=g,
               output_type="np")
    assert out.maps.shape == (2, 32, 32) and out.maps.dtype == np.uint8
    assert out.maps.max() < table.num_classes and out.prompts[1] == (ClassPrompt("Cystic Duct", "small"),)
    again = pipe(["Liver, large, upper left; Grasper, small, centre"], 3, 2.0,
                 generator=[torch.Generator().manual_seed(0)], output_type="np").maps
    assert np.array_equal(again[0], out.maps[0])  # seeded: the same map again
    with pytest.raises(PromptError, match="'Livr'"):
        pipe(["Livr, large"], 2)


def test_each_clause_is_one_cross_attention_token():
    from casdm.mapgen import PromptConditioner

    c = PromptConditioner("minilm", VOCAB, 384)
    prompts = [parse_prompt("Liver, large, upper left; Grasper, small", VOCAB),
               parse_prompt("Liver, large, lower right", VOCAB), ()]
    cond = c(prompts, "cpu")
    assert cond["text"].shape == (3, 2, 384) and cond["mask"].tolist() == [[1, 1], [1, 0], [1, 0]]
    assert cond["fields"][0, 0].tolist() == [3, 3, 1, 0] and cond["fields"][0, 1].tolist() == [6, 1, 0, 0]
    assert not torch.allclose(cond["text"][0, 0], cond["text"][1, 0])  # the location changes the embedding
    assert cond["text"][2].abs().sum() == 0  # the empty prompt: one zero token (classifier-free null)


class NoAutocast:
    """The one accelerator method a kind's loss calls, without mixed precision."""

    def autocast(self):
        return torch.autocast("cpu", enabled=False)


def generator_loss(prepared, **options):
    """A fresh generator built by the mapgen kind from the tiny params + ``options`` (of its training block), and its
    training loss on four prepared maps, already back-propagated: (model, loss)."""
    from benchmark.engine.data import PreparedDataset
    from benchmark.kinds.registry import make_kind
    from benchmark.stages.mapgen import MAPGEN, generator_params

    data = PreparedDataset(prepared, "train")
    kind = make_kind(generator_params(tiny_params(maps={"generator": {"training": options}})), MAPGEN, data.table)
    kind.prepare(data)
    model = kind.build()
    batch = torch.stack([data[i]["labels"] for i in range(4)])
    loss, _ = kind.loss(model, None, batch, torch.Generator().manual_seed(0), NoAutocast())
    loss.backward()
    return model, loss


def test_learned_field_control_trains_its_embeddings(prepared):
    model, loss = generator_loss(prepared, text_encoder="learned")
    assert model.fields is not None and model.config.text_encoder == "learned"
    assert torch.isfinite(loss) and model.fields.tables[0].weight.grad.abs().sum() > 0


def test_maps_config_errors_are_named():
    from benchmark.config import ConfigError

    with pytest.raises(ConfigError, match="maps.train.stpes: unknown key"):
        tiny_params(maps={"train": {"stpes": 3}})
    with pytest.raises(ConfigError, match="maps.generate.image_model 'nope'"):
        tiny_params(maps={"generate": {"image_model": "nope"}})
    with pytest.raises(ConfigError, match="prompt_file"):
        tiny_params(maps={"generate": {"prompts": "file", "prompt_file": None}})
    from benchmark.stages.mapgen import generator_options

    with pytest.raises(ValueError, match=r"maps\.generator\.training\.text_encoder: .*unknown text encoder 'bert'"):
        generator_options(tiny_params(maps={"generator": {"training": {"text_encoder": "bert"}}}))
    with pytest.raises(ConfigError, match="maps.generator.kind: 'casdm'; the map generator is kind 'mapgen'"):
        tiny_params(maps={"generator": {"kind": "casdm"}})


def test_weighted_batches_oversample_rare_maps_and_resume_alike():
    from benchmark.engine.data import StepBatchSampler

    weights = [5.0 if i < 10 else 1.0 for i in range(100)]  # 10 "rare" maps drawn 5x as often
    full = list(StepBatchSampler(100, 8, 0, 0, 400, weights=weights))
    resumed = list(StepBatchSampler(100, 8, 0, 250, 400, weights=weights))
    assert full[250:] == resumed  # a resumed run draws the batches a straight run would
    share = sum(i < 10 for b in full for i in b) / (8 * 400)
    assert abs(share - 50 / 140) < 0.03  # 10 x 5 of 140 weight units
    first_epoch = [i for b in list(StepBatchSampler(100, 8, 0, 0, 12)) for i in b]  # 96 of 100: unweighted epochs
    assert len(set(first_epoch)) == 96  # never repeat a frame within an epoch


def test_a_class_only_in_specks_is_absent_however_many_pixels_they_add_up_to():
    from casdm.prompts import class_stats

    m = np.full((30, 30), 4, dtype=np.uint8)
    m[::4, ::4] = 7  # 64 single Blood pixels: 64 px in all, far above min_fraction, but no region
    m[10:13, 10:13] = 8  # one 9 px Cystic Duct region
    stats = class_stats(m, len(NAMES), 0.005)  # 4.5 -> 4 px regions count
    assert 7 not in stats and 8 in stats
    assert stats[8].area == pytest.approx(9 / 900) and stats[8].regions == 1
    m[0:2, 0:2] = 7  # now one real Blood region: only its 4 px count, the specks move neither area nor centroid
    stats = class_stats(m, len(NAMES), 0.005)
    assert stats[7].area == pytest.approx(4 / 900) and stats[7].centroid == pytest.approx((1 / 30, 1 / 30))


def test_posterior_skip_reads_the_noisy_maps_own_evidence():
    """2 sqrt(a) / (1 - a) x_t alone classifies a lightly noised map and says nothing at zero SNR."""
    from casdm.mapgen import encode_maps, posterior_logits

    labels = torch.from_numpy(hand_drawn()).long()[None].repeat(2, 1, 1)
    x0 = encode_maps(labels, len(NAMES))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    a = torch.tensor([0.9, 0.0])
    xt = a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * noise
    logits = posterior_logits(xt, a)
    assert (logits[0].argmax(0) == labels[0]).float().mean() > 0.99
    assert logits[1].abs().max() == 0


@pytest.mark.parametrize("pooled, skip", [(True, True), (False, False)])
def test_pooled_prompt_and_posterior_skip_are_saved_and_trained(prepared, tmp_path, pooled, skip):
    """The pooled prompt feeds the timestep embedding (it gets a gradient); both flags survive
    save_pretrained/from_pretrained, so a saved generator samples as it was trained."""
    from casdm.mapgen import MapGenerator

    model, loss = generator_loss(prepared, pooled_prompt=pooled, posterior_skip=skip)
    assert torch.isfinite(loss)
    emb = model.unet.class_embedding
    assert (emb is not None) == pooled
    if pooled:
        assert emb.linear_1.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path / "g")
    again = MapGenerator.from_pretrained(tmp_path / "g")
    assert (again.config.pooled_prompt, again.config.posterior_skip) == (pooled, skip)


def test_layout_draws_each_clause_where_and_as_large_as_asked_the_smallest_on_top():
    """A lone clause is a disc of about the area its size word asks, in its location's cell; a small
    clause at the same place as a large one stays on top; unnamed classes are -1; the empty prompt 0."""
    from casdm.prompts import clause_area, render_layout

    liver, duct = ClassPrompt("Liver", "large", "centre"), ClassPrompt("Cystic Duct", "small", "centre")
    alone = render_layout((ClassPrompt("Liver", "medium", "upper left"),), VOCAB, 60)
    disc = alone[2]
    assert (disc > 0.5).mean() == pytest.approx(clause_area(ClassPrompt("Liver", "medium"), VOCAB), rel=0.15)
    ys, xs = np.nonzero(disc > 0.5)
    assert ys.mean() < 20 and xs.mean() < 20  # the upper-left cell of a 60 px map
    assert (np.delete(alone, 2, axis=0) == -1).all()
    both = render_layout((liver, duct), VOCAB, 60)
    centre = (slice(28, 32), slice(28, 32))
    assert (both[8][centre] > 0.9).all() and (both[2][centre] == 0).all()  # the duct on top of the liver
    assert (both[2] > 0.5).sum() > (both[8] > 0.5).sum() > 0  # the liver still holds its ring
    assert (render_layout((), VOCAB, 60) == 0).all()


def test_layout_gain_adds_the_drawn_prompt_to_the_logits_and_is_saved(prepared, tmp_path):
    """gain x layout is exactly what the gain adds (same weights, gain 0 vs 3); the layout channels
    are an input the network reads (gradient on its first convolution's layout half); a layout
    generator refuses a call without the layout; the settings survive save/load."""
    from casdm.mapgen import MapGenerator

    model, loss = generator_loss(prepared, prompt_layout=True, layout_gain=3.0)
    assert torch.isfinite(loss)
    k = model.config.num_classes
    assert model.unet.conv_in.in_channels == 2 * k
    assert model.unet.conv_in.weight.grad[:, k:].abs().sum() > 0
    model.save_pretrained(tmp_path / "g")
    again = MapGenerator.from_pretrained(tmp_path / "g")
    assert (again.config.prompt_layout, again.config.layout_gain) == (True, 3.0)
    off = MapGenerator.from_config({**again.config, "layout_gain": 0.0})
    off.load_state_dict(again.state_dict())
    s = again.config.sample_size
    x, t = torch.randn(1, k, s, s), torch.tensor([500])
    fields, mask = torch.zeros(1, 1, 4, dtype=torch.long), torch.ones(1, 1)
    text = torch.randn(1, 1, again.config.text_dim)
    layout = torch.rand(1, k, s, s) * 2 - 1
    with torch.no_grad():
        diff = again(x, t, fields, text, mask, layout) - off(x, t, fields, text, mask, layout)
    assert torch.allclose(diff, 3.0 * layout, atol=1e-5)
    with pytest.raises(ValueError, match="prompt_layout"):
        again(x, t, fields, text, mask)
    with pytest.raises(ValueError, match="needs prompt_layout"):
        MapGenerator.from_config({**again.config, "prompt_layout": False})
