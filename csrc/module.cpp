// The extension module gigagan_kernels._C. Importing it runs the static torch.library registrations of the
// op files (TORCH_LIBRARY_FRAGMENT in adaptive_modconv.cpp and attention.cpp); it exports no Python symbols.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(gigagan_kernels_cuda, m) {}

extern "C" PyObject* PyInit__C(void) {
    static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "gigagan_kernels CUDA ops", -1, nullptr};
    return PyModule_Create(&module_def);
}
