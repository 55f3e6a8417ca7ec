from nodes.v3_ui import PreviewImage, PreviewMask, PreviewText, SavedImages, SavedResult, UIOutput  # noqa: F401
