"""Kubernetes (KubeRay) deployment: manifest templates, their renderer and a CRD validator.

Not part of the installed package: these modules run from a checkout (CI, an operator's
machine), never inside the service's image.
"""
