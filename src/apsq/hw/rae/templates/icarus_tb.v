// Icarus testbench of the exported RAE Verilog (apsq.hw.rae.icarus): prints OUT <hex> per output
// beat and CYCLES n. Placeholders: upper-case names between at signs (apsq.hw.rae.template.render).
`timescale 1ns/1ps
module tb;
  reg clk = 1'b0;
  reg rst = 1'b1;
  always #5 clk = ~clk;
  reg s0 = 1'b0, s1 = 1'b0;
  reg [@PW1@:0] last_pos = 0;
  reg i_valid = 1'b0;
  reg [@IW1@:0] i_payload = 0;
  wire i_ready, o_valid, busy;
  reg o_ready = 1'b0;
  wire [@OW1@:0] o_payload;
  @TOP@ dut (.clk(clk), .rst(rst), .s0(s0), .s1(s1), .last_pos(last_pos),
    .i__valid(i_valid), .i__ready(i_ready), .i__payload(i_payload),
    .o__valid(o_valid), .o__ready(o_ready), .o__payload(o_payload), .busy(busy));
  reg [@IW1@:0] beats [0:@BEATS1@];
  reg [31:0] cfg [0:@CFG1@];  // per pass: gs-1, M-1, beats
  integer seed = @SEED@, k = 0, k_end = 0, pass = 0, outs = 0, expected = 0, cycles = 0, sending = 0;
  initial begin
    $readmemh("beats.hex", beats);
    $readmemh("cfg.hex", cfg);
    repeat (2) @(posedge clk);
    @(negedge clk) rst = 1'b0;
  end
  always @(posedge clk) if (!rst) begin
    cycles <= cycles + 1;
    @READY@
    if (o_valid && o_ready) begin
      $display("OUT %h", o_payload);
      outs <= outs + 1;
      if (outs + 1 == @N_OUT@) begin
        $display("CYCLES %0d", cycles + 1);
        $finish;
      end
    end
    if (!sending) begin
      if (pass < @N_PASSES@ && !busy && !i_valid && outs == expected) begin
        s0 <= cfg[3 * pass][0];
        s1 <= cfg[3 * pass][1];
        last_pos <= cfg[3 * pass + 1];
        k_end <= k + cfg[3 * pass + 2];
        i_payload <= beats[k];
        i_valid <= 1'b1;
        sending <= 1;
      end
    end else if (i_valid && i_ready) begin
      k <= k + 1;
      if (k + 1 == k_end) begin
        i_valid <= 1'b0;
        sending <= 0;
        expected <= expected + cfg[3 * pass + 1] + 1;
        pass <= pass + 1;
      end else begin
        i_payload <= beats[k + 1];
      end
    end
  end
  initial begin
    #@TIMEOUT_NS@;
    $display("TIMEOUT");
    $finish;
  end
endmodule
