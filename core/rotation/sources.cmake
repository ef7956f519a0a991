# Rotation module (Hadamard matrices for QuaRot/SpinQuant-style rotations); paths relative to core/.
set(RESPIN_ROTATION_SOURCES rotation/hadamard_matrix.cpp)
