"""The only package that imports TensorFlow and Keras: load, build, write, verify, warm up.

Importing this package itself is cheap; TensorFlow is imported by its submodules (except
`samples` and `verifier`'s parent side), so commands that never touch a model stay fast.
"""
