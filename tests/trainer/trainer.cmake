# tests/trainer under mpirun on 2 ranks (the same binary runs alone through test_trainer's own entries).
find_program(LOOM_MPIRUN NAMES mpirun mpiexec)
if(LOOM_MPIRUN AND TARGET test_trainer)
  add_test(NAME trainer_multirank_np2
           COMMAND ${PROJECT_SOURCE_DIR}/tests/with_port.sh -- ${LOOM_MPIRUN} --oversubscribe -np 2
                   $<TARGET_FILE:test_trainer> --gtest_filter=TrainerMultiRank.*)
  set_tests_properties(trainer_multirank_np2 PROPERTIES LABELS trainer TIMEOUT 300
                       ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1;LOOM_STORE_SECRET=trainer-test;LOOM_COLLECTIVE_TIMEOUT_S=120;OMP_NUM_THREADS=1")
endif()

# The ConvNet examples reach >= 97% test accuracy on the digits split on 1 rank and on 2 ranks (trainlaunch), the two
# within one test sample of each other.
if(TARGET convnet_digits AND TARGET convnet_digits_fit AND TARGET trainlaunch)
  foreach(ex convnet_digits convnet_digits_fit)
    add_test(NAME Examples.${ex}_97pct_1_and_2_ranks
             COMMAND ${CMAKE_CURRENT_LIST_DIR}/convnet_digits_test.sh ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}
                     $<TARGET_FILE:${ex}> $<TARGET_FILE:trainlaunch> 7 3e-3 0.97)
    set_tests_properties(Examples.${ex}_97pct_1_and_2_ranks PROPERTIES LABELS trainer TIMEOUT 1500
                         RESOURCE_LOCK digits_data)
  endforeach()
endif()
