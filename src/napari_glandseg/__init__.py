"""napari-glandseg: deep-learning segmentation of glands, nuclei, cells and membranes.

Importing the package is cheap and never loads Qt or napari; the public API below is imported
on first use.
"""

__version__ = "0.4.0"

_API = {
    "read_image": "napari_glandseg.io",
    "write_labels": "napari_glandseg.io",
    "find_pairs": "napari_glandseg.io",
    "load_model": "napari_glandseg.models",
    "list_models": "napari_glandseg.models",
    "build_model": "napari_glandseg.models",
    "ModelCard": "napari_glandseg.models",
    "segment": "napari_glandseg.inference",
    "iter_segment": "napari_glandseg.inference",
    "SegmentParams": "napari_glandseg.inference",
    "evaluate": "napari_glandseg.metrics",
    "evaluate_dataset": "napari_glandseg.metrics",
    "iter_evaluate_dataset": "napari_glandseg.metrics",
    "postprocess": "napari_glandseg.postprocessing",
    "PostprocessParams": "napari_glandseg.postprocessing",
    "train": "napari_glandseg.training",
    "iter_train": "napari_glandseg.training",
    "TrainParams": "napari_glandseg.training",
    "TrainingPair": "napari_glandseg.training",
    "object_table": "napari_glandseg.postprocessing",
    "segment_file": "napari_glandseg.pipeline",
    "iter_segment_file": "napari_glandseg.pipeline",
    "FileParams": "napari_glandseg.pipeline",
    "check_model_name": "napari_glandseg.models",
    "merge": "napari_glandseg.correct",
    "split_line": "napari_glandseg.correct",
    "split_seeds": "napari_glandseg.correct",
    "add_object": "napari_glandseg.correct",
    "fill_holes": "napari_glandseg.correct",
    "rank_objects": "napari_glandseg.correct",
    "ReviewQueue": "napari_glandseg.correct",
    "labels_to_geojson": "napari_glandseg.geojson",
    "geojson_to_labels": "napari_glandseg.geojson",
    "export_geojson": "napari_glandseg.geojson",
    "export_bioimageio": "napari_glandseg.bioimageio",
    "import_bioimageio": "napari_glandseg.bioimageio",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'napari_glandseg' has no attribute {name!r}")
