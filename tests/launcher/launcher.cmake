# End-to-end tests of trainlaunch (included from tests/CMakeLists.txt): tiny
# shell programs as ranks for failure, restart, output and signals; two
# launchers on 127.0.0.1 for multi-node, and collectives_mp for a real all-reduce.
if(TARGET trainlaunch)
  set(_loom_e2e_cases exit3 standalone_port sigkill restart_ok restart_short output sigint sigterm sigterm_failed sigterm_everyone sigint_twice twonode_env
                      twonode_fail_restart launcher_killed twonode_sigint twonode_sigterm)
  if(TARGET collectives_mp)
    list(APPEND _loom_e2e_cases twonode_allreduce twonode_allreduce_restart)
  endif()
  foreach(c ${_loom_e2e_cases})
    add_test(NAME launcher_e2e_${c}
             COMMAND ${CMAKE_CURRENT_LIST_DIR}/e2e.sh ${c} $<TARGET_FILE:trainlaunch>
                     $<$<TARGET_EXISTS:collectives_mp>:$<TARGET_FILE:collectives_mp>>)
    set_tests_properties(launcher_e2e_${c} PROPERTIES LABELS launcher TIMEOUT 120)
  endforeach()
endif()
# A real single-node Slurm started by the test itself (skipped, exit 77, without
# slurm-wlm or root): both scripts of scripts/slurm/ submitted with sbatch; and
# pretrain preempted under both (scancel --signal=TERM, repeated) ending COMPLETED
# with exit 0 and the checkpoint of the stop step, resumed by a resubmission.
if(TARGET trainlaunch AND TARGET collectives_mp)
  add_test(NAME launcher_slurm_sbatch
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/slurm_test.sh scripts $<TARGET_FILE:trainlaunch>
                   $<TARGET_FILE:collectives_mp> ${PROJECT_SOURCE_DIR})
  set_tests_properties(launcher_slurm_sbatch PROPERTIES LABELS "launcher;slurm" TIMEOUT 180 SKIP_RETURN_CODE 77
                       RESOURCE_LOCK loom_slurm)
endif()
if(TARGET trainlaunch AND TARGET pretrain)
  add_test(NAME launcher_slurm_preempt
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/slurm_test.sh preempt $<TARGET_FILE:trainlaunch> $<TARGET_FILE:pretrain>
                   ${PROJECT_SOURCE_DIR} $<$<TARGET_EXISTS:loomckpt>:$<TARGET_FILE:loomckpt>>)
  set_tests_properties(launcher_slurm_preempt PROPERTIES LABELS "launcher;slurm;recipes" TIMEOUT 300
                       SKIP_RETURN_CODE 77 RESOURCE_LOCK loom_slurm)
endif()
# Two nodes on real addresses: each a network namespace with its own address and
# host name, made by scripts/netns_cluster.sh (needs root and ip netns; skipped,
# exit 77, without them): forming, the stores' binding, a link cut mid-run and
# mismatched secrets.
if(TARGET trainlaunch AND TARGET collectives_mp)
  add_executable(netns_rank ${CMAKE_CURRENT_LIST_DIR}/netns/netns_rank.cc)  # not in the test_launcher glob
  target_link_libraries(netns_rank PRIVATE loom::collectives)
  foreach(c form iface bind linkdown secret)
    add_test(NAME launcher_netns_${c}
             COMMAND ${CMAKE_CURRENT_LIST_DIR}/netns_test.sh ${c} $<TARGET_FILE:trainlaunch>
                     $<TARGET_FILE:collectives_mp> $<TARGET_FILE:netns_rank> ${PROJECT_SOURCE_DIR})
    set_tests_properties(launcher_netns_${c} PROPERTIES LABELS "launcher;netns" TIMEOUT 150 SKIP_RETURN_CODE 77)
  endforeach()
endif()
