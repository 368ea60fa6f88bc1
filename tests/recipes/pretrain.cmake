# End-to-end tests of the pretrain recipe (included from tests/CMakeLists.txt): the README's main job as written; the
# tiny CPU job shrunk, on one and two ranks, resume (bit-exact continuation, more steps, nothing left to do), HSDP -> FSDP -> DDP resume, SIGTERM stop-and-resume (also SIGTERM repeated to the launcher's process group and to every rank), FSDP/TP/bf16 layouts against DDP, a slowed rank
# named as the straggler, scripts/slurm/pretrain_multinode.sbatch under a stand-in srun, config errors
# (exit 2 naming file, line and key), --validate, scripts/plot_metrics; and --validate of every shipped config at the
# world size it is written for.
if(TARGET pretrain AND TARGET trainlaunch)
  foreach(c one_rank two_ranks resume hsdp_resume sigterm sigterm_group layouts activation_checkpointing straggler slurm_script slurm_port_taken config_error validate plot init_from
            init_from_hf freeze)
    add_test(NAME Pretrain.${c}
             COMMAND ${CMAKE_CURRENT_LIST_DIR}/pretrain_e2e.sh ${c} $<TARGET_FILE:pretrain> $<TARGET_FILE:trainlaunch>
                     ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
    set_tests_properties(Pretrain.${c} PROPERTIES LABELS recipes TIMEOUT 180 SKIP_RETURN_CODE 77)
  endforeach()
  # logging.trace_steps: per-rank and merged Chrome trace, exposed communication in metrics, scripts/plot_trace.
  add_test(NAME Pretrain.trace
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/pretrain_e2e.sh trace $<TARGET_FILE:pretrain> $<TARGET_FILE:trainlaunch>
                   ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  set_tests_properties(Pretrain.trace PROPERTIES LABELS recipes TIMEOUT 180 SKIP_RETURN_CODE 77)
  # Pinned to cores with busy loops beside one rank: other tests running at the same time would blur which is slow.
  set_tests_properties(Pretrain.straggler PROPERTIES RUN_SERIAL TRUE)
  # eval_layouts: one checkpoint evaluated (pretrain --eval) on 1 rank, 2 DDP, 2 FSDP and 2 TP ranks gives one eval loss.
  add_test(NAME Pretrain.eval_layouts
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/pretrain_e2e.sh eval_layouts $<TARGET_FILE:pretrain>
                   $<TARGET_FILE:trainlaunch> ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  set_tests_properties(Pretrain.eval_layouts PROPERTIES LABELS recipes TIMEOUT 180)
  # The README's main job at full size (about a minute on 2 cores).
  add_test(NAME MainJob.PretrainTinyCpu2Ranks
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/pretrain_e2e.sh main_job $<TARGET_FILE:pretrain> $<TARGET_FILE:trainlaunch>
                   ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  set_tests_properties(MainJob.PretrainTinyCpu2Ranks PROPERTIES LABELS recipes TIMEOUT 300)
endif()
if(TARGET pretrain)
  # config name : the world size it is written for
  foreach(entry tiny_cpu:2 gpt2_124m_1gpu:1 gpt2_124m_8gpu_ddp:8 gpt2_124m_8gpu_fsdp:8 llama_1b_2node_fsdp_tp:16
                llama3_8b_4node:32)
    string(REPLACE ":" ";" parts ${entry})
    list(GET parts 0 name)
    list(GET parts 1 world)
    # Passes only when pretrain exits 0 and prints the line "config OK".
    add_test(NAME Pretrain.validate_config_${name}
             COMMAND ${CMAKE_COMMAND} "-DEXPECT_LINE=config OK" -P ${CMAKE_CURRENT_LIST_DIR}/expect_success.cmake --
                     $<TARGET_FILE:pretrain> --config ${PROJECT_SOURCE_DIR}/configs/${name}.yaml --validate
                     --world-size ${world})
    set_tests_properties(Pretrain.validate_config_${name} PROPERTIES LABELS recipes TIMEOUT 60)
  endforeach()
  # The check itself: it fails for a config that does not validate (tiny_cpu is written for 2 ranks, not 3) and for a
  # program that prints "config OK" but exits non-zero.
  add_test(NAME Pretrain.validate_config_check_fails_on_a_bad_config
           COMMAND ${CMAKE_COMMAND} "-DEXPECT_LINE=config OK" -P ${CMAKE_CURRENT_LIST_DIR}/expect_success.cmake --
                   $<TARGET_FILE:pretrain> --config ${PROJECT_SOURCE_DIR}/configs/tiny_cpu.yaml --validate
                   --world-size 3)
  add_test(NAME Pretrain.validate_config_check_fails_on_a_non_zero_exit
           COMMAND ${CMAKE_COMMAND} "-DEXPECT_LINE=config OK" -P ${CMAKE_CURRENT_LIST_DIR}/expect_success.cmake --
                   sh -c "echo 'config OK' && exit 3")
  set_tests_properties(Pretrain.validate_config_check_fails_on_a_bad_config
                       Pretrain.validate_config_check_fails_on_a_non_zero_exit
                       PROPERTIES LABELS recipes TIMEOUT 60 WILL_FAIL TRUE)
endif()
include(${CMAKE_CURRENT_LIST_DIR}/memory.cmake)
