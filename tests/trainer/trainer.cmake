# tests/trainer under mpirun on 2 ranks (the same binary runs alone through test_trainer's own entries).
find_program(LOOM_MPIRUN NAMES mpirun mpiexec)
if(LOOM_MPIRUN AND TARGET test_trainer)
  add_test(NAME trainer_multirank_np2
           COMMAND ${PROJECT_SOURCE_DIR}/tests/with_port.sh -- ${LOOM_MPIRUN} --oversubscribe -np 2
                   $<TARGET_FILE:test_trainer> --gtest_filter=TrainerMultiRank.*)
  set_tests_properties(trainer_multirank_np2 PROPERTIES LABELS trainer TIMEOUT 300
                       ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1;LOOM_STORE_SECRET=trainer-test;LOOM_COLLECTIVE_TIMEOUT_S=120;OMP_NUM_THREADS=1")
endif()
