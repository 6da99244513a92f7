// Verilog wrapper of the Verilator backend (apsq.hw.rae.verilator): plain port names around the
// exported engine (Verilator encodes the "__" of i__valid); placeholders: names between at signs.
module rae_top(input clk, input rst, input s0, input s1, input [@PW1@:0] last_pos,
  input i_valid, output i_ready, input [@IW1@:0] i_payload,
  output o_valid, input o_ready, output [@OW1@:0] o_payload, output busy,
  output [3:0] bank_rd, output [3:0] bank_wr, output rq, output acc);
  @TOP@ dut (.clk(clk), .rst(rst), .s0(s0), .s1(s1), .last_pos(last_pos),
    .i__valid(i_valid), .i__ready(i_ready), .i__payload(i_payload),
    .o__valid(o_valid), .o__ready(o_ready), .o__payload(o_payload), .busy(busy),
    .bank_rd(bank_rd), .bank_wr(bank_wr), .rq(rq), .acc(acc));
endmodule
