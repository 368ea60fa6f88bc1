# Tests of the scripts that run the CUDA backend on a GPU node (included from tests/CMakeLists.txt, after
# tests/bench). None needs a GPU: stand-ins print what the GPU programs would.

# run_gpu_tests.sh and gpu_checks.sh count canned GoogleTest output right (a failed parameterised case once,
# a crash, the runner's summary line).
add_test(NAME Scripts.GpuRunnersCountEachCaseOnce
         COMMAND ${CMAKE_CURRENT_LIST_DIR}/gpu_runner_test.sh ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_BINARY_DIR})
set_tests_properties(Scripts.GpuRunnersCountEachCaseOnce PROPERTIES LABELS scripts TIMEOUT 120)

# scripts/gpu_window.sh on a fake node: every outcome reported, hangs cut, the deadline kept, $OUT small.
if(TARGET trainlaunch)
  add_test(NAME Scripts.GpuWindowDryRun
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/gpu_window_test.sh ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  set_tests_properties(Scripts.GpuWindowDryRun PROPERTIES LABELS scripts SKIP_RETURN_CODE 77 TIMEOUT 300)
endif()

# bench_gpt2_gpu under a bundle's run.sh gives its PyTorch peer the caller's LD_LIBRARY_PATH and its TF32 setting.
if(TARGET bench_gpt2_gpu)
  add_test(NAME Scripts.BenchPeerGetsCallerEnvironment
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/bench_peer_env_test.sh ${PROJECT_SOURCE_DIR}
                   $<TARGET_FILE:bench_gpt2_gpu> ${CMAKE_CURRENT_BINARY_DIR})
  set_tests_properties(Scripts.BenchPeerGetsCallerEnvironment PROPERTIES LABELS scripts TIMEOUT 300)
endif()
