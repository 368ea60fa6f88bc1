# Multi-rank checkpoint tests (included from tests/CMakeLists.txt): test_checkpoint_mp
# builds tests/checkpoint/mp/*.cc with the parallel test harness and runs under mpirun
# on 2 and 4 ranks (gloo), one CTest entry per suite group.
file(GLOB _loom_ckmp_srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/mp/*.cc)
if(NOT _loom_ckmp_srcs)
  return()
endif()
add_executable(test_checkpoint_mp ${_loom_ckmp_srcs} ${PROJECT_SOURCE_DIR}/tests/parallel/harness.cc
                                  ${PROJECT_SOURCE_DIR}/tests/parallel/main.cc)
target_link_libraries(test_checkpoint_mp PRIVATE loom::checkpoint loom::parallel GTest::gtest)
target_include_directories(test_checkpoint_mp PRIVATE ${PROJECT_SOURCE_DIR})
if(TARGET loomckpt)
  add_dependencies(test_checkpoint_mp loomckpt)
endif()
target_compile_definitions(test_checkpoint_mp PRIVATE LOOM_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
                                                      LOOM_BINARY_DIR="${PROJECT_BINARY_DIR}")
find_program(LOOM_MPIRUN NAMES mpirun mpiexec)
if(LOOM_MPIRUN)
  set(_loom_cenv OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
                 LOOM_STORE_SECRET=checkpoint-test LOOM_COLLECTIVE_TIMEOUT_S=120 OMP_NUM_THREADS=1
                 LOOM_BINARY_DIR=${PROJECT_BINARY_DIR})
  set(_loom_with_port ${PROJECT_SOURCE_DIR}/tests/with_port.sh --)  # a free MASTER_PORT, retried on EADDRINUSE
  # entry name -> gtest filter, world size and backends. The reshard pair shares a directory: gloo only, in order.
  set(_loom_csuites "resume|CheckpointResume*|2|gloo,mpi" "corrupt|CheckpointCorrupt*|2|gloo,mpi"
                    "reshard_save4|CheckpointReshardSave4*|4|gloo" "reshard_load2|CheckpointReshardLoad2*|2|gloo" "hf_import|HfImportMp*|2|gloo")
  foreach(entry ${_loom_csuites})
    string(REPLACE "|" ";" parts "${entry}")
    list(GET parts 0 suite)
    list(GET parts 1 filter)
    list(GET parts 2 n)
    list(GET parts 3 backends)
    string(REPLACE "," ";" backends "${backends}")
    foreach(backend ${backends})
      set(_name checkpoint_mp_${suite}_np${n})
      if(NOT backend STREQUAL "gloo")
        set(_name checkpoint_mp_${suite}_${backend}_np${n})
      endif()
      add_test(NAME ${_name}
               COMMAND ${_loom_with_port} ${LOOM_MPIRUN} --oversubscribe -np ${n} $<TARGET_FILE:test_checkpoint_mp> --gtest_filter=${filter})
      # Each entry works in its own directories (by test name), except that both backends of a suite use the same
      # ones: they must not run at the same time.
      set_tests_properties(${_name} PROPERTIES LABELS checkpoint TIMEOUT 300 RESOURCE_LOCK checkpoint_${suite}
                           ENVIRONMENT "${_loom_cenv};LOOM_TEST_BACKEND=${backend}")
    endforeach()
  endforeach()
  # One process: crash tests (it starts its own 2-rank job with mpirun and kills a rank mid-save), the CLI tool,
  # export/import and the PyTorch check of the export, Hugging Face imports against PyTorch's logits.
  add_test(NAME checkpoint_single COMMAND ${PROJECT_SOURCE_DIR}/tests/with_port.sh --var LOOM_CKPT_CRASH_PORT --
                                          $<TARGET_FILE:test_checkpoint_mp> --gtest_filter=CheckpointCrash.*:CheckpointTool.*:HfImport.*)
  set_tests_properties(checkpoint_single PROPERTIES LABELS checkpoint TIMEOUT 300
                       ENVIRONMENT "${_loom_cenv};LOOM_TEST_BACKEND=gloo")
  set_tests_properties(checkpoint_mp_reshard_load2_np2 PROPERTIES DEPENDS checkpoint_mp_reshard_save4_np4)
endif()
