# Rotation module, libtorch parts (residual-transition approximation, Cayley SGD); paths relative
# to core/, linked into respin_core.
set(RESPIN_ROTATION_TORCH_SOURCES rotation/residual_approx.cpp rotation/cayley_sgd.cpp
  rotation/hadamard_transform.cpp
  rotation/fusion.cpp)
