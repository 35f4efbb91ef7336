"""Fast tests: no Ray, no servers.

Folders mirror the packages: the test of image_search/imaging.py is image_search/test_imaging.py.
"""
