# Tests of the scripts that run the CUDA backend on a GPU node (included from tests/CMakeLists.txt, after
# tests/bench). None needs a GPU: stand-ins print what the GPU programs would.

# run_gpu_tests.sh and gpu_checks.sh count canned GoogleTest output right (a failed parameterised case once,
# a crash, the runner's summary line).
add_test(NAME Scripts.GpuRunnersCountEachCaseOnce
         COMMAND ${CMAKE_CURRENT_LIST_DIR}/gpu_runner_test.sh ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_BINARY_DIR})
set_tests_properties(Scripts.GpuRunnersCountEachCaseOnce PROPERTIES LABELS scripts TIMEOUT 120)
