# Multi-process collectives tests (included from tests/CMakeLists.txt): 2 and 4
# ranks over TCP on localhost (gloo) and under mpirun (mpi and gloo), compared
# with closed forms and with Open MPI's own collectives. tests/with_port.sh gives
# each run a free MASTER_PORT below the ephemeral range (and retries on EADDRINUSE).
find_package(MPI REQUIRED COMPONENTS CXX)
find_program(LOOM_MPIRUN NAMES mpirun mpiexec)
add_executable(collectives_mp ${CMAKE_CURRENT_LIST_DIR}/multiproc/collectives_mp.cc)
target_link_libraries(collectives_mp PRIVATE loom::collectives MPI::MPI_CXX)
set(_loom_mpi_env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
                  LOOM_STORE_SECRET=collectives-mp-test)
set(_loom_with_port ${PROJECT_SOURCE_DIR}/tests/with_port.sh --)
foreach(n 2 3 4)
  add_test(NAME collectives_tcp_gloo_np${n}
           COMMAND ${_loom_with_port} ${CMAKE_CURRENT_LIST_DIR}/multiproc/run_tcp.sh ${n} $<TARGET_FILE:collectives_mp> gloo)
  set_tests_properties(collectives_tcp_gloo_np${n} PROPERTIES LABELS collectives TIMEOUT 120)
  # The gloo rings between processes both ways: over TCP (LOOM_GLOO_CMA=0) and reading the neighbour's memory (the
  # default on one host), each with 4 KiB segments so the test's buffers take many of them.
  foreach(cma 0 1)
    add_test(NAME collectives_tcp_gloo_cma${cma}_np${n}
             COMMAND ${_loom_with_port} ${CMAKE_CURRENT_LIST_DIR}/multiproc/run_tcp.sh ${n} $<TARGET_FILE:collectives_mp> gloo)
    set_tests_properties(collectives_tcp_gloo_cma${cma}_np${n} PROPERTIES LABELS collectives TIMEOUT 120
                         ENVIRONMENT "LOOM_GLOO_CMA=${cma};LOOM_GLOO_SEGMENT_BYTES=4096")
  endforeach()
  # Rank 1 alone has LOOM_GLOO_CMA=0: the group must agree on TCP rings instead of waiting for it or mixing paths.
  add_test(NAME collectives_tcp_gloo_cma_mixed_np${n}
           COMMAND ${_loom_with_port} ${CMAKE_CURRENT_LIST_DIR}/multiproc/run_tcp.sh ${n} /bin/sh -c
                   "if [ \"$RANK\" = 1 ]; then export LOOM_GLOO_CMA=0; fi; exec \"$0\" gloo" $<TARGET_FILE:collectives_mp>)
  set_tests_properties(collectives_tcp_gloo_cma_mixed_np${n} PROPERTIES LABELS collectives TIMEOUT 120)
  if(LOOM_MPIRUN)
    foreach(backend mpi gloo)
      add_test(NAME collectives_mpirun_${backend}_np${n}
               COMMAND ${_loom_with_port} ${LOOM_MPIRUN} --oversubscribe -np ${n} $<TARGET_FILE:collectives_mp> ${backend})
      set_tests_properties(collectives_mpirun_${backend}_np${n} PROPERTIES LABELS collectives TIMEOUT 120
                           ENVIRONMENT "${_loom_mpi_env}")
    endforeach()
    # The mpi backend's own ring (used from 1 MiB up) forced onto every size,
    # so the small buffers of this test exercise it too; 3 ranks for uneven chunks.
    add_test(NAME collectives_mpirun_mpi_ring_np${n}
             COMMAND ${_loom_with_port} ${LOOM_MPIRUN} --oversubscribe -np ${n} $<TARGET_FILE:collectives_mp> mpi)
    set_tests_properties(collectives_mpirun_mpi_ring_np${n} PROPERTIES LABELS collectives TIMEOUT 120
                         ENVIRONMENT "${_loom_mpi_env};LOOM_MPI_RING_MIN_BYTES=1")
  endif()
endforeach()
# Port choices: none of tests/ or scripts/ in the ephemeral range or drawn at random; the free-port helpers work.
foreach(c lint helper)
  add_test(NAME ports_${c} COMMAND ${PROJECT_SOURCE_DIR}/tests/ports_test.sh ${c} ${PROJECT_SOURCE_DIR}
           WORKING_DIRECTORY ${PROJECT_BINARY_DIR})
  set_tests_properties(ports_${c} PROPERTIES LABELS collectives TIMEOUT 60)
endforeach()
# The NCCL case of test_collectives again under the gpu label (it skips without a device).
add_test(NAME collectives_nccl_gpu COMMAND test_collectives --gtest_filter=Nccl.*)
set_tests_properties(collectives_nccl_gpu PROPERTIES LABELS gpu SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]")
