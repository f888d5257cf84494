"""Explanations of a served model's answers: KernelSHAP (the `shap` package) and occlusion, against the
model's reference data (`reference.npz`, a small sample of PUBLIC data the release path seals beside it).

`reference.py` reads the reference, `methods.py` computes attributions over any batch function,
`limits.py` bounds who may ask how often, and `engine.py` (`Explainer`) ties them to a served model, off
the event loop. The front ends (gateway/server/explain.py, gateway/server/explain_rest.py) only translate.
Nothing is imported here: the release path reads `reference.py` alone, without the serving side.
"""
