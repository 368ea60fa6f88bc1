# Parallel wrappers (included from tests/CMakeLists.txt). test_parallel runs
# alone (world of one rank: every wrapper must also work there) and under
# mpirun on 2 and 4 ranks with the gloo and mpi backends, one CTest entry per
# suite so they run side by side and time out separately.
file(GLOB _loom_parallel_srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/*.cc)
add_executable(test_parallel ${_loom_parallel_srcs})
target_link_libraries(test_parallel PRIVATE loom::parallel loom::recipes GTest::gtest)
target_include_directories(test_parallel PRIVATE ${PROJECT_SOURCE_DIR})
target_compile_definitions(test_parallel PRIVATE LOOM_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
                                                 LOOM_BINARY_DIR="${PROJECT_BINARY_DIR}")
gtest_discover_tests(test_parallel DISCOVERY_MODE PRE_TEST DISCOVERY_TIMEOUT 60
                     PROPERTIES LABELS parallel TIMEOUT 600 SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]")

find_program(LOOM_MPIRUN NAMES mpirun mpiexec)
if(LOOM_MPIRUN)
  set(_loom_penv OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
                 LOOM_STORE_SECRET=parallel-test LOOM_COLLECTIVE_TIMEOUT_S=120 OMP_NUM_THREADS=1)
  set(_loom_with_port ${PROJECT_SOURCE_DIR}/tests/with_port.sh --)  # a free MASTER_PORT, retried on EADDRINUSE
  # suite name -> gtest filter and the world sizes it runs on
  set(_loom_psuites "ddp|DDP*:DeviceMesh*|2,4" "fsdp|FullyShard*|2,4" "tp|TensorParallel*|2,4"
                    "fsdp_tp|FsdpTp*|4" "hsdp|Hsdp.*|4" "hsdp_tp|HsdpTp.*|8"
                    "actckpt|ActivationCheckpointingParallel*|2,4")
  list(APPEND _loom_psuites "trace|Trace*|2")  # the timeline (trace_test.cc)
  list(APPEND _loom_psuites "syncbn|SyncBatchNorm*|2")  # sync_batch_norm_test.cc
  foreach(entry ${_loom_psuites})
    string(REPLACE "|" ";" parts "${entry}")
    list(GET parts 0 suite)
    list(GET parts 1 filter)
    list(GET parts 2 sizes)
    string(REPLACE "," ";" sizes "${sizes}")
    foreach(n ${sizes})
      foreach(backend gloo mpi)
        set(_f ${filter})
        # An MPI collective that never completes cannot be abandoned: the timeout case runs on gloo only.
        if(suite STREQUAL "trace" AND backend STREQUAL "mpi")
          set(_f "${filter}:-Trace.Timeout*")
        endif()
        add_test(NAME parallel_${suite}_${backend}_np${n}
                 COMMAND ${_loom_with_port} ${LOOM_MPIRUN} --oversubscribe -np ${n} $<TARGET_FILE:test_parallel>
                         --gtest_filter=${_f})
        set_tests_properties(parallel_${suite}_${backend}_np${n} PROPERTIES LABELS parallel TIMEOUT 300
                             ENVIRONMENT "${_loom_penv};LOOM_TEST_BACKEND=${backend}")
      endforeach()
    endforeach()
  endforeach()
endif()
