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
  wire i_ready, o_valid, busy, rq, acc;
  wire [3:0] bank_rd, bank_wr;
  reg o_ready = 1'b0;
  wire [@OW1@:0] o_payload;
  @TOP@ dut (.clk(clk), .rst(rst), .s0(s0), .s1(s1), .last_pos(last_pos),
    .i__valid(i_valid), .i__ready(i_ready), .i__payload(i_payload),
    .o__valid(o_valid), .o__ready(o_ready), .o__payload(o_payload), .busy(busy),
    .bank_rd(bank_rd), .bank_wr(bank_wr), .rq(rq), .acc(acc));
  reg [@IW1@:0] beats [0:@BEATS1@];
  reg [31:0] cfg [0:@CFG1@];  // per pass: gs-1, M-1, beats
  integer rd0 = 0, rd1 = 0, rd2 = 0, rd3 = 0, wr0 = 0, wr1 = 0, wr2 = 0, wr3 = 0, n_rq = 0, n_acc = 0;
  integer seed = @SEED@, k = 0, k_end = 0, pass = 0, outs = 0, expected = 0, cycles = 0, sending = 0;
  initial begin
    $readmemh("beats.hex", beats);
    $readmemh("cfg.hex", cfg);
    repeat (2) @(posedge clk);
    @(negedge clk) rst = 1'b0;
  end
  always @(posedge clk) if (!rst) begin
    cycles <= cycles + 1;
    // activity: the engine's enables at this edge (blocking, so the final $display sees them)
    rd0 = rd0 + bank_rd[0]; rd1 = rd1 + bank_rd[1]; rd2 = rd2 + bank_rd[2]; rd3 = rd3 + bank_rd[3];
    wr0 = wr0 + bank_wr[0]; wr1 = wr1 + bank_wr[1]; wr2 = wr2 + bank_wr[2]; wr3 = wr3 + bank_wr[3];
    n_rq = n_rq + rq; n_acc = n_acc + acc;
    @READY@
    if (o_valid && o_ready) begin
      $display("OUT %h", o_payload);
      outs <= outs + 1;
      if (outs + 1 == @N_OUT@) begin
        $display("CYCLES %0d", cycles + 1);
        $display("ACT %0d %0d %0d %0d %0d %0d %0d %0d %0d %0d", rd0, rd1, rd2, rd3, wr0, wr1, wr2, wr3, n_rq, n_acc);
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
